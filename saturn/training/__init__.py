"""The worker-side training loop (`loop`, with its batch and metrics I/O in `step_io`) and the
checkpoint format: tensors saved and loaded with torch.distributed.checkpoint (`checkpoint`), and
the torch-free catalog of a checkpoint directory (`catalog`: meta, owner, latest, listing)."""
