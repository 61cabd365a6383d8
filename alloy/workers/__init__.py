"""The Ray layer: parents held in the object store, and long-lived workers that build and score children.

`store` puts each parent into `ParentStore` actors (one object per layer block) with per-tensor
distance statistics; `builder` merges a recipe from the store into a resident model in place; `pool`
starts one `CandidateWorker` per concurrent trial and leases them to trials; `placement` decides
whether the cluster can ever hold the workers before anything waits on them; `local_ray` is a
driver's Ray session (an embedded Ray, or a cluster's address) and the reaper that cleans up after a
killed driver. Takes plain settings
(`pool.PoolSettings`), never a search space: imports `alloy.merge`, `alloy.io` and `alloy.evaluation`,
never `alloy.search`.
"""
