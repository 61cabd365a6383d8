"""Checkpoint input and output: lazy safetensors reading, sharded writing, block FP8, atomic outputs.

`checkpoint` reads a Hugging Face folder tensor by tensor; `shards` writes safetensors shards whose
headers are fixed up front; `layout` maps on-disk expert tensors to transformers' fused in-memory
ones; `fp8` (de)quantizes DeepSeek-style 128×128 blocks; `atomic` stages outputs under a hidden name;
`yaml_files` reads YAML with errors that name the file. The bottom layer: imports no other alloy
package.
"""
