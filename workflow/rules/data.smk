rule prepare_data:
    output:
        train=directory("results/{dataset}/data/train"),
        test=directory("results/{dataset}/data/test"),
        manifest="results/{dataset}/data/manifest.csv",
    params:
        out="results/{dataset}/data",
        args=options("data"),
    log:
        "logs/{dataset}/prepare_data.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion data --out {params.out} {params.args} > {log} 2>&1"
