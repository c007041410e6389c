# Other methods in the same table: the test pairs exported in the layouts other inpainting codes read
# (`snakemake export`), and the outputs of those codes (config external_methods) imported as rows.
rule export_pairs:
    input:
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
    output:
        directory("results/{dataset}/export"),
    log:
        "logs/{dataset}/export.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion export --pairs {input.pairs} --gt-dir {input.gt} --out {output} > {log} 2>&1"


rule export:
    input:
        expand("results/{dataset}/export", dataset=run_datasets()),


# The job's few lines reach the console too: a warning that the outputs were made for other masks must be seen.
rule import_external:
    input:
        unpack(import_sources),
    output:
        directory("results/{dataset}/inpaint/{method}/{bin}/imported"),
    params:
        args=options("import"),
    log:
        "logs/{dataset}/import/{method}_{bin}.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion import --pairs {input.pairs} --gt-dir {input.gt} --bin {wildcards.bin} "
        "--method {wildcards.method} --dataset {wildcards.dataset} {params.args} --out {output} 2>&1 | tee {log}"
