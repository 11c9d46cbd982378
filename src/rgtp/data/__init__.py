"""The datasets of the paper and how the models see them: readers (ImageNet VID :mod:`~rgtp.data.vid`, Kinetics-400
:mod:`~rgtp.data.kinetics`, EPIC-KITCHENS-100 :mod:`~rgtp.data.epic`, the common :mod:`~rgtp.data.action` clips), the
datasets by name (:mod:`~rgtp.data.registry`), the evaluation views (:mod:`~rgtp.data.views`) and in-memory detection
sets (:mod:`~rgtp.data.detection`). Generated sets and test videos are the lab's (:mod:`rgtp.lab.data`)."""
