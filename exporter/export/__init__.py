"""Writing the export: model.onnx traced from the compact decoder, and the directory around it.

    onnx_file.py  layout_of (the cache layout), write_onnx (trace, passes, checks)
    directory.py  save_export (atomic directory, projectors, tokenizer, genai config), point_latest,
                  check_out_dir (an --out that is not an earlier export is refused, never deleted)
    claim.py      claim_out_dir (one writer per --out: a lock; leftovers of killed writers removed)
"""
