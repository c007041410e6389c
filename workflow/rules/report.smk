rule table:
    input:
        unpack(table_inputs),
    output:
        md="results/tables/{dataset}.md",
        tex="results/tables/{dataset}.tex",
        csv=report(
            "results/tables/{dataset}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"dataset": "{dataset}"},
        ),
    params:
        prefix="results/tables/{dataset}",
        args=options("tables"),
    log:
        "logs/{dataset}/table.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion tables --per-image {input.per_image} --sets {input.sets} --dataset {wildcards.dataset} {params.args} "
        "--out {params.prefix} > {log} 2>&1"


rule figures:
    input:
        unpack(figure_inputs),
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
        structure="results/{dataset}/structure/test",
    output:
        qualitative=report(
            "results/figures/{dataset}/qualitative.png",
            caption="../report/qualitative.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "qualitative"},
        ),
        qualitative_pdf="results/figures/{dataset}/qualitative.pdf",
        curves=report(
            "results/figures/{dataset}/metrics_vs_hole_ratio.png",
            caption="../report/curves.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "metric vs hole ratio"},
        ),
        curves_pdf="results/figures/{dataset}/metrics_vs_hole_ratio.pdf",
    params:
        args=options("figures"),
    log:
        "logs/{dataset}/figures.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion figures --pairs {input.pairs} --gt-dir {input.gt} --structure-dir {input.structure} "
        "--inpaint-dir results/{wildcards.dataset}/inpaint --per-image {input.per_image} {params.args} "
        "--qualitative {output.qualitative} --curves {output.curves} > {log} 2>&1"


rule learning_curves:
    input:
        unpack(curve_sources),
    output:
        png=report(
            "results/figures/{dataset}/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "learning curves"},
        ),
        pdf="results/figures/{dataset}/learning_curves.pdf",
    params:
        args=curve_options,
    log:
        "logs/{dataset}/learning_curves.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion curves {params.args} --out {output.png} > {log} 2>&1"


# The results explorer: one static page of single test images (every row's fill and metrics; filters, sorting);
# it reads the per-image metrics and the images, and opens from disk without a server.
rule explorer:
    input:
        per_image=lambda wildcards: table_inputs(wildcards)["per_image"],
        pairs="results/{dataset}/masks/pairs.csv",
        gt="results/{dataset}/data/test",
        structure="results/{dataset}/structure/test",
    output:
        report(
            "results/{dataset}/explorer/index.html",
            caption="../report/explorer.rst",
            category="Explorer",
            labels={"dataset": "{dataset}", "page": "results explorer"},
        ),
    params:
        args=options("explorer"),
    log:
        "logs/{dataset}/explorer.log",
    conda:
        "../envs/strdiffusion.yaml"
    shell:
        "python -m strdiffusion explorer --pairs {input.pairs} --gt-dir {input.gt} --structure-dir {input.structure} "
        "--inpaint-dir results/{wildcards.dataset}/inpaint --per-image {input.per_image} --dataset {wildcards.dataset} "
        "{params.args} --out {output} > {log} 2>&1"
