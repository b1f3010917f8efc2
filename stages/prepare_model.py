"""Stage prepare_model: the shared base model (model.name) as safetensors + tokenizer + manifest under models/base/.
Stage prepare_system_model@<system> (`python stages/prepare_model.py <system>`, for codi, markovian, transplant): that
system's base under models/base_<system>/, from `<system>.model`, or the shared model when it is null (prepared
again rather than copied from models/base: a system's stages never wait on, or re-run with, the shared base's stage)."""
import os
from typing import Literal

from cotlab import hub, tracking
from cotlab.models import EMBEDDED, TINY, prepare_base
from cotlab.stage import base_dir, mlflow_params, stage_main


@stage_main("prepare_model")
def main(params, system: Literal["codi", "markovian", "transplant"] = None):
    name, key = params.model_source(system)
    out = base_dir(system)
    if name not in (EMBEDDED, TINY) and not os.path.exists(name):
        hub.offline_unless_reachable()  # a Hugging Face id: offline, fail at once rather than after retries
    stage = "prepare_model" if system is None else f"prepare_system_model@{system}"
    with tracking.stage_run(stage, mlflow_params(params), method="base"):
        manifest = prepare_base(name, out, params.model.dtype, params.model.device, params.model.init_seed, key=key)
        tracking.log_metrics({"n_parameters": manifest["n_parameters"]})
    print(f"{stage}: {manifest['base_model']['name']} ({manifest['n_parameters']:,} parameters, {key}) -> {out}")


if __name__ == "__main__":
    main()
