# Training: one rule per network kind (strdiffusion.settings.methods.NETWORKS), named train_structure,
# train_texture, train_critic and train_irsde, so that profiles set resources per network. Each rule
# declares only the final checkpoint as output, so Snakemake never deletes the resumable state in
# results/{dataset}/models/<net>_state/; re-running an interrupted job resumes from it. A non-empty
# config["checkpoints"][net] makes the plain rows sample that file instead (strdiffusion.settings.methods.row_models); the
# rule then runs only for `_fresh` rows.
for net in NETWORKS:

    rule:
        name:
            f"train_{net}"
        input:
            images="results/{dataset}/data/train",
            structure="results/{dataset}/structure/train",
            masks="results/{dataset}/masks/pool",
        output:
            model=f"results/{{dataset}}/models/{net}.pt",
            curve=f"results/{{dataset}}/curves/{net}.csv",
        params:
            net=net,
            settings=options("train", net=net),
            state=f"results/{{dataset}}/models/{net}_state",
            nproc=train_nproc,
        log:
            f"logs/{{dataset}}/train_{net}.log",
        benchmark:
            f"logs/{{dataset}}/benchmarks/train_{net}.tsv"
        threads: 1
        # the longest training first (its iteration count), so that the shorter ones fill the other cores
        priority: train_iterations(config, net)
        resources:
            gpu=GPU_JOB,
        conda:
            "../envs/strdiffusion.yaml"
        # A job started beside a live one on the same state (an older driver's, after that driver was killed)
        # waits for it instead of failing: a failed job's outputs are deleted, and they would be the files the
        # older job has just finished. The waiting line goes to the log and, through descriptor 3, the console.
        shell:
            "STRDIFFUSION_JOB_GPUS={resources.gpu} STRDIFFUSION_CONSOLE_FD=3 python -m strdiffusion train --net {params.net} "
            "--images {input.images} --structure {input.structure} --masks {input.masks} --out {output.model} "
            "--curve {output.curve} --state-dir {params.state} {params.settings} --threads {threads} "
            "--nproc {params.nproc} --lock-wait -1 3>&2 > {log} 2>&1"
