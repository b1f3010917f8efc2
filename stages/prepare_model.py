"""Stage prepare_model: the base model as safetensors + tokenizer + manifest under models/base/."""
import os

from cotlab import hub, tracking
from cotlab.models import EMBEDDED, TINY, prepare_base
from cotlab.stage import BASE_MODEL, mlflow_params, stage_main


@stage_main("prepare_model")
def main(params):
    name = params.model_name()
    if name not in (EMBEDDED, TINY) and not os.path.exists(name):
        hub.offline_unless_reachable()  # a Hugging Face id: offline, fail at once rather than after retries
    with tracking.stage_run("prepare_model", mlflow_params(params), method="base"):
        manifest = prepare_base(name, BASE_MODEL, params.model.dtype, params.model.device, params.seed)
        tracking.log_metrics({"n_parameters": manifest["n_parameters"]})
    print(f"prepare_model: {manifest['base_model']['name']} ({manifest['n_parameters']:,} parameters) -> {BASE_MODEL}")


if __name__ == "__main__":
    main()
