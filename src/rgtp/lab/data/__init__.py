"""The lab's data: generated detection and action sets, generated test videos, and the vtest.avi pedestrians.

* :mod:`~rgtp.lab.data.shapes`: the generated shapes detection set, six shape classes
  (:data:`~rgtp.lab.data.shapes.SHAPES_CLASSES`, the one list of shape names).
* :mod:`~rgtp.lab.data.motions`: the generated motions action set (ten motion classes).
* :mod:`~rgtp.lab.data.pedestrians`: OpenCV's vtest.avi with HOG boxes, as a detection set.
* :mod:`~rgtp.lab.data.synthetic`: quick test videos of moving shapes, and synthetic ImageNet VID, Kinetics-400 and
  EPIC-KITCHENS splits in the datasets' own layouts (for tests and for trying the readers without downloads).
* :mod:`~rgtp.lab.data.registry`: the sets by name.
"""
