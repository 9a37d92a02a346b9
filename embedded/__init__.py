"""The embedded data sets: real Fashion-MNIST garments (Xiao et al. 2017) laid out as ImageNet (`imagenet`), COCO 2017
(`coco`) and ADE20K (`ade20k`) are, so that every task runs end to end on a CPU with the readers it uses for the real
sets. `fashion_mnist` reads the source IDX files; `cache` keeps each set under `$HARNESS_DATA/embedded`, written once.

Nothing here imports `harness` or `tasks`: the tasks read these sets, and `harness data embedded` writes them ahead of
a run.
"""
