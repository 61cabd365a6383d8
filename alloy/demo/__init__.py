"""The laptop demo's ingredients: three synthetic domains, a tiny pre-trained MoE backbone, the pipeline.

`domains` writes problems in the benchmarks' record formats, `backbone` pre-trains the tiny MoE,
`pipeline` runs branch → sweep → verdict (behind `alloy demo`). Sits beside `commands/`: it may import
every layer.
"""
