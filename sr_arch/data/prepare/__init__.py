"""Dataset preparation steps behind ``sr-arch prepare <step>``, one module per step.

* ``subimages``: crop large HR / LR images into overlapping sub-images (BasicSR's extract_subimages).
* ``bicubic``: MATLAB-compatible bicubic LR images (mod-crop first).
* ``lmdb_store``: LMDB databases in basicsr's layout, and their verification against the source folder.
* ``meta_info``: meta-info files for HR-only folders (ImageNet-style), with size and readability checks.
* ``benchmarks``: Set5/Set14/B100/Urban100/Manga109 laid out as ``benchmark/<Set>/HR`` + ``LR_bicubic/X{s}``.
* ``gaussian8``: the Gaussian8 blurred LR test sets of blind SR (LabNet), from the ``benchmark`` layout.

Every step writes atomically and resumably (see ``common``, which also holds the one list of image
file extensions and the one atomic file writer of the package): outputs are staged under
``<output>.partial`` and renamed when complete, so an interrupted run leaves no half-written output
under the final name and re-running the same command completes it; a step that produces nothing fails.
"""
