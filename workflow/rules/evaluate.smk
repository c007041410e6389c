rule image_metrics:
    input:
        shards=shard_dirs,
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
    output:
        "results/{dataset}/metrics/{method}/{bin}/per_image.csv",
    params:
        pred="results/{dataset}/inpaint/{method}/{bin}",
        metrics=metric_list("per_image"),
        weights=metric_weights_args("per_image"),
        crop=config["metrics"]["crop"],
    log:
        "logs/{dataset}/metrics/{method}_{bin}_images.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion metrics images --pairs {input.pairs} --gt-dir {input.gt} --pred-dir {params.pred} "
        "--method {wildcards.method} --bin {wildcards.bin} --metrics {params.metrics} --crop {params.crop} "
        "{params.weights} --out {output} > {log} 2>&1"


rule set_metrics:
    input:
        shards=shard_dirs,
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
    output:
        "results/{dataset}/metrics/{method}/{bin}/set.csv",
    params:
        pred="results/{dataset}/inpaint/{method}/{bin}",
        metrics=metric_list("per_set"),
        weights=metric_weights_args("per_set"),
    log:
        "logs/{dataset}/metrics/{method}_{bin}_set.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion metrics sets --pairs {input.pairs} --gt-dir {input.gt} --pred-dir {params.pred} "
        "--method {wildcards.method} --bin {wildcards.bin} --metrics {params.metrics} {params.weights} "
        "--out {output} > {log} 2>&1"
