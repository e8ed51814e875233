# sedlib: sound event detection, ATST-SED + multi-iteration multi-stage fine-tuning, as one DAG.
#
#   snakemake results/eval_psds.json --cores 8 --resources gpu=1
#
# Targets go before --resources (it takes several values and would swallow a target after it), or end it with --.
#
# The configuration is validated against sedlib/schemas/config.schema.yaml when the DAG is built.
from snakemake.utils import min_version

min_version("9.0")


configfile: "workflow_config.yaml"


report: "docs/report.rst"


include: "rules/common.smk"
include: "rules/check.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/train.smk"
include: "rules/pseudo_labels.smk"
include: "rules/postprocess.smk"
include: "rules/evaluate.smk"


rule all:
    default_target: True
    input:
        f"{R}/eval_psds.json",
        f"{R}/plots/psd_roc_comparison.png",
