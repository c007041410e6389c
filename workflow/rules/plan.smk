# `snakemake plan`: the jobs, peak memory, GPU-hours and disk of this config, before running it
# (`strdiffusion plan --profile DIR` also checks a profile's mem_mb against the estimates).
localrules:
    plan,


rule plan:
    output:
        "results/plan.csv",
    params:
        configfiles=plan_configfiles,
    log:
        "logs/plan.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion plan {params.configfiles} --out {output} 2>&1 | tee {log}"
