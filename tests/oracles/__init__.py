"""Small reimplementations written from the original repositories' code, used as test oracles only.

* ``qbnorm_oracle``: ioanacroi/qb-norm ``dynamic_inverted_softmax.py`` (``get_retrieved_videos``,
  ``get_index_to_normalize``, ``qb_norm``), with the input copied instead of written in place.
* ``dbnorm_oracle``: yimuwangcs/Better_Cross_Modal_Retrieval ``DBNorm/dbnorm.py`` (``IS``, ``db_norm``,
  ``get_skewness``), with its argument bug fixed (the test query x gallery matrix is the one normalised)
  and its beta names kept (its beta1 = query bank, beta2 = gallery bank: the reverse of the NNN paper).
"""
