rule table:
    input:
        unpack(table_inputs),
    output:
        md="results/tables/{dataset}.md",
        tex="results/tables/{dataset}.tex",
        csv="results/tables/{dataset}.csv",
    params:
        prefix="results/tables/{dataset}",
        args=table_args,
    log:
        "logs/{dataset}/table.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion tables --per-image {input.per_image} --sets {input.sets} {params.args} "
        "--out {params.prefix} > {log} 2>&1"
