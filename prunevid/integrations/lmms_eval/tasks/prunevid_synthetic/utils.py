"""The hooks of the lmms-eval task ``prunevid_synthetic`` (named by its YAML's ``!function utils.<name>``): the kit's
synthetic benchmark under its ``--protocol lmms-eval`` rules, from ``prunevid.integrations.lmms_eval.synthetic_task``
(lmms-eval imports this file by its path, so the hooks live in the package and are only named here)."""
from prunevid.integrations.lmms_eval.synthetic_task import aggregate, doc_to_text, doc_to_visual, process_results

prunevid_synthetic_doc_to_visual = doc_to_visual
prunevid_synthetic_doc_to_text = doc_to_text
prunevid_synthetic_process_results = process_results
prunevid_synthetic_aggregate = aggregate
