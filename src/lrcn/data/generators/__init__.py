"""Dataset generators: they draw images and write whole datasets in the official layouts.

* ``generated``: ``GeneratedDataset``, the rules every generated dataset's folder follows
  (where it lives, complete or absent, rebuilt when its version changes);
* ``easy_vizwiz``: easy-VizWiz, VizWiz-style answerability data made from easy-VQA
  (``easyvqa_source`` reads easy-VQA's images, ``photos`` degrades them);
* ``shapes_scenes``: scenes of several coloured shapes and questions about them, written
  as relational-shapes in the VQA-v2 layout (``relational_shapes``) or with unanswerable
  questions in the VizWiz layout (``shapes_vizwiz``).

The generated datasets register their readers beside their generators; ``lrcn data build
NAME`` builds one explicitly, and a reader's first ``load_split`` builds it otherwise.
Nothing is imported here: importing ``lrcn.data`` registers the datasets.
"""
