# Metric weights: fetched once on the machine that runs Snakemake (cluster nodes are often offline).
localrules:
    weights,


rule weights:
    output:
        "results/weights.json",
    params:
        args=options("weights"),
    log:
        "logs/weights.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion weights fetch --allow-offline {params.args} --status {output} 2>&1 | tee {log}"


rule image_metrics:
    input:
        shards=shard_dirs,
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
        weights=weights_status,
    output:
        csv="results/{dataset}/metrics/{method}/{bin}/per_image.csv",
        status="results/{dataset}/metrics/{method}/{bin}/per_image.status.json",
    params:
        settings=options("metrics images"),
        weights_state=weights_present("per_image"),
    log:
        "logs/{dataset}/metrics/{method}_{bin}_images.log",
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "STRDIFFUSION_JOB_GPUS={resources.gpu} python -m strdiffusion metrics images --pairs {input.pairs} --gt-dir {input.gt} --pred-dir {input.shards} "
        "--method {wildcards.method} --bin {wildcards.bin} {params.settings} --out {output.csv} > {log} 2>&1"


rule set_metrics:
    input:
        shards=shard_dirs,
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
        weights=weights_status,
    output:
        csv="results/{dataset}/metrics/{method}/{bin}/set.csv",
        status="results/{dataset}/metrics/{method}/{bin}/set.status.json",
    params:
        settings=options("metrics sets"),
        weights_state=weights_present("per_set"),
    log:
        "logs/{dataset}/metrics/{method}_{bin}_set.log",
    resources:
        gpu=GPU_JOB,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "STRDIFFUSION_JOB_GPUS={resources.gpu} python -m strdiffusion metrics sets --pairs {input.pairs} --gt-dir {input.gt} --pred-dir {input.shards} "
        "--method {wildcards.method} --bin {wildcards.bin} {params.settings} --out {output.csv} > {log} 2>&1"
