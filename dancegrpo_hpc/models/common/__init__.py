"""What the joint-attention DiT families (HunyuanVideo, FLUX) share: layers, dual- and
single-stream blocks, the parallel base module and the diffusers weight I/O."""
