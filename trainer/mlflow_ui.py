"""How AVSA's experiments open in the MLflow UI: as model training (runs, loss curves), not GenAI.

MLflow 3.17's UI has two layouts. "GenAI", the default, files runs under "Evaluation runs" beside
traces, judges and prompts; "Model training" lists runs and their metric charts. Read from the UI
bundle of mlflow 3.17.2 (``mlflow/server/js/build/static/js``) and checked in headless Chromium:

- the layout follows the ``workflowType`` URL parameter (``genai`` or ``machine_learning``), else the
  browser's last choice on the switch at the top of the sidebar (local storage
  ``mlflow.workflowType_v1``), else GenAI. So the links AVSA prints (:func:`ui_url`) ask for
  ``machine_learning``. In-app links to a run drop the parameter: a click from the runs table lands
  in the browser's choice again;
- the experiment tag ``mlflow.experimentKind`` is where the UI's own experiment-kind selector files an
  experiment; 3.17.2 hides that selector and lets the switch decide, so the tag alone changes nothing
  there. The experiments AVSA trains into carry it (:func:`training_experiment`) for the UIs and
  queries that do read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:  # importing mlflow takes seconds; a tracker without a server never needs it
    from mlflow.tracking import MlflowClient

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"  # the UI's "Machine learning" kind
MODEL_TRAINING_VIEW = {"workflowType": "machine_learning"}


def training_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created as a model-training experiment when missing.

    An existing experiment without a kind (made by hand, or by an older AVSA) gets the tag; one whose
    kind someone chose is left as it is.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link into the MLflow UI at ``tracking_uri`` in its model-training layout: the experiment's runs
    as metric charts, or with ``run_id`` that run's metric charts."""
    if run_id:
        page, query = f"experiments/{experiment_id}/runs/{run_id}/model-metrics", MODEL_TRAINING_VIEW
    else:
        page, query = f"experiments/{experiment_id}/runs", {**MODEL_TRAINING_VIEW, "compareRunsMode": "CHART"}
    return f"{tracking_uri.rstrip('/')}/#/{page}?{urlencode(query)}"
