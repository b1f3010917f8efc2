"""Stage prepare_model: the base model as safetensors + tokenizer + manifest under models/base/."""
from cotlab import tracking
from cotlab.models import prepare_base
from cotlab.stage import BASE_MODEL, mlflow_params, stage_main


@stage_main("prepare_model")
def main(params):
    with tracking.stage_run("prepare_model", mlflow_params(params), method="base"):
        manifest = prepare_base(params.model_name(), BASE_MODEL, params.model.dtype, params.model.device, params.seed)
        tracking.log_metrics({"n_parameters": manifest["n_parameters"]})
    print(f"prepare_model: {manifest['base_model']['name']} ({manifest['n_parameters']:,} parameters) -> {BASE_MODEL}")


if __name__ == "__main__":
    main()
