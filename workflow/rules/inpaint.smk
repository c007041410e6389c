rule inpaint_shard:
    input:
        unpack(method_models),
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
        structure="results/{dataset}/structure/test",
    output:
        directory("results/{dataset}/inpaint/{method}/{bin}/shard_{shard}"),
    params:
        sampling=options("inpaint"),
        checkpoints=checkpoint_options,
        method=lambda wildcards: base_method(wildcards.method),
    log:
        "logs/{dataset}/inpaint/{method}_{bin}_{shard}.log",
    resources:
        gpu=inpaint_gpus,
    benchmark:
        "logs/{dataset}/benchmarks/inpaint/{method}_{bin}_{shard}.tsv"
    conda:
        "../envs/strdiffusion.yaml"
    # as a training job: beside a live job of an older driver on the same shard, wait and keep what it finished
    shell:
        "STRDIFFUSION_JOB_GPUS={resources.gpu} STRDIFFUSION_CONSOLE_FD=3 python -m strdiffusion inpaint --method {params.method} "
        "--pairs {input.pairs} --bin {wildcards.bin} --gt-dir {input.gt} --structure-dir {input.structure} "
        "--shard {wildcards.shard} {params.sampling} {params.checkpoints} --out {output} --lock-wait -1 3>&2 > {log} 2>&1"
