# Training of the four networks (issue 4). Each rule declares only the final checkpoint as output,
# so Snakemake never deletes the resumable state in results/{dataset}/models/<net>_state/; re-running
# an interrupted job resumes from it. A non-empty config["checkpoints"][net] makes model_path() point
# at that file instead, and these rules are then simply not needed.


rule train_structure:
    input:
        images="results/{dataset}/data/train",
        structure="results/{dataset}/structure/train",
        masks=train_masks_dir,
    output:
        model="results/{dataset}/models/structure.pt",
        curve="results/{dataset}/curves/structure.csv",
    params:
        args=train_args("structure"),
        state="results/{dataset}/models/structure_state",
        nproc=train_nproc,
    log:
        "logs/{dataset}/train_structure.log",
    benchmark:
        "benchmarks/rules/{dataset}/train_structure.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion train --net structure --images {input.images} --structure {input.structure} "
        "--masks {input.masks} --out {output.model} --curve {output.curve} --state-dir {params.state} {params.args} --threads {threads} "
        "--nproc {params.nproc} > {log} 2>&1"


rule train_texture:
    input:
        images="results/{dataset}/data/train",
        structure="results/{dataset}/structure/train",
        masks=train_masks_dir,
    output:
        model="results/{dataset}/models/texture.pt",
        curve="results/{dataset}/curves/texture.csv",
    params:
        args=train_args("texture"),
        state="results/{dataset}/models/texture_state",
        nproc=train_nproc,
    log:
        "logs/{dataset}/train_texture.log",
    benchmark:
        "benchmarks/rules/{dataset}/train_texture.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion train --net texture --images {input.images} --structure {input.structure} "
        "--masks {input.masks} --out {output.model} --curve {output.curve} --state-dir {params.state} {params.args} --threads {threads} "
        "--nproc {params.nproc} > {log} 2>&1"


rule train_critic:
    input:
        images="results/{dataset}/data/train",
        structure="results/{dataset}/structure/train",
        masks=train_masks_dir,
    output:
        model="results/{dataset}/models/critic.pt",
        curve="results/{dataset}/curves/critic.csv",
    params:
        args=train_args("critic"),
        state="results/{dataset}/models/critic_state",
        nproc=train_nproc,
    log:
        "logs/{dataset}/train_critic.log",
    benchmark:
        "benchmarks/rules/{dataset}/train_critic.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion train --net critic --images {input.images} --structure {input.structure} "
        "--masks {input.masks} --out {output.model} --curve {output.curve} --state-dir {params.state} {params.args} --threads {threads} "
        "--nproc {params.nproc} > {log} 2>&1"


rule train_irsde:
    input:
        images="results/{dataset}/data/train",
        structure="results/{dataset}/structure/train",
        masks=train_masks_dir,
    output:
        model="results/{dataset}/models/irsde.pt",
        curve="results/{dataset}/curves/irsde.csv",
    params:
        args=train_args("irsde"),
        state="results/{dataset}/models/irsde_state",
        nproc=train_nproc,
    log:
        "logs/{dataset}/train_irsde.log",
    benchmark:
        "benchmarks/rules/{dataset}/train_irsde.tsv"
    threads: 1
    resources:
        gpu=0,
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion train --net irsde --images {input.images} --structure {input.structure} "
        "--masks {input.masks} --out {output.model} --curve {output.curve} --state-dir {params.state} {params.args} --threads {threads} "
        "--nproc {params.nproc} > {log} 2>&1"
