rule extract_structure:
    input:
        images="results/{dataset}/data/{split}",
    output:
        directory("results/{dataset}/structure/{split}"),
    params:
        args=options("structure"),
    log:
        "logs/{dataset}/structure_{split}.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion structure --images {input.images} --out {output} {params.args} > {log} 2>&1"
