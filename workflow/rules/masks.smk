rule test_masks:
    output:
        directory("results/{dataset}/masks/test"),
    params:
        args=options("masks generate"),
    log:
        "logs/{dataset}/test_masks.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion masks generate {params.args} --out {output} > {log} 2>&1"


rule train_masks:
    output:
        directory("results/{dataset}/masks/pool"),
    params:
        args=options("masks pool"),
    log:
        "logs/{dataset}/train_masks.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion masks pool {params.args} --out {output} > {log} 2>&1"


rule pair_masks:
    input:
        manifest="results/{dataset}/data/manifest.csv",
        masks="results/{dataset}/masks/test",
    output:
        "results/{dataset}/masks/pairs.csv",
    params:
        args=options("masks pairs"),
    log:
        "logs/{dataset}/pair_masks.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion masks pairs --manifest {input.manifest} --masks {input.masks} {params.args} "
        "--out {output} > {log} 2>&1"
