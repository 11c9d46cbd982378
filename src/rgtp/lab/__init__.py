"""The lab: what rgtp uses to test, measure and train its own small models, apart from the library.

Nothing here is needed to use the method; the library's core (:mod:`rgtp.runtime`, :mod:`rgtp.pruning`,
:mod:`rgtp.models`, :mod:`rgtp.adapters`, the dataset readers of :mod:`rgtp.data`, :mod:`rgtp.evaluation`,
:mod:`rgtp.training`) never imports it. Only the command line (``rgtp bench``, ``rgtp demo``, ``rgtp train`` on the
generated sets, ``rgtp pedestrian-boxes``) and :mod:`rgtp.run` (the class names of the shipped weights) reach it,
inside the functions that need it.

* :mod:`rgtp.lab.data`: generated datasets (shapes, motions, test videos and synthetic VID / Kinetics / EPIC splits)
  and the vtest.avi pedestrians with their HOG boxes; the sets by name (:mod:`rgtp.lab.data.registry`).
* :mod:`rgtp.lab.bench`: the offline benchmark, RGTP against its peers on the small models (``rgtp bench``).
* :mod:`rgtp.lab.recipes`: how the small shipped models (``src/rgtp/weights``) were trained: their training recipes
  and the motions curriculum.

The lab plugs into the core's tables when imported: :mod:`rgtp.lab.data.registry` adds the generated action sets to
:data:`rgtp.data.registry.ACTION_DATASETS`, :mod:`rgtp.lab.recipes` adds the motions recipe to
:data:`rgtp.training.vivit.RECIPES`.
"""
