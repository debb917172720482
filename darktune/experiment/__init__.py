"""Experiments: a YAML spec validated against TrainConfig's fields (`spec`, `spec_file`), the run-folder
contract and reuse rules (`runs`), the executors that run the grid (`executors`, `ray_executor`, `task`, `progress`)
and the stages-then-grid runner (`runner`)."""
