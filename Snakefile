# StrDiffusion reproduction workflow: data -> structure -> masks -> training -> inpainting -> metrics -> tables.
# Run: snakemake --cores all   (see README.md). Config: config/config.yaml, validated before any rule runs.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/structure.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/inpaint.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/plan.smk"


rule all:
    input:
        all_targets(),
    default_target: True


onerror:
    # why each job failed, from its log, on the console (Snakemake names the logs only)
    for line in failed_job_errors(log):
        print(f"strdiffusion: {line}", file=sys.stderr)
