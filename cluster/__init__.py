"""Ray preprocessing, object detection for viewpoints, the local stack, multi-node launch, the `avsa` CLI."""
