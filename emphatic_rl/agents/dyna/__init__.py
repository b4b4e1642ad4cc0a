"""Dyna agents: tabular Dyna-Q (:mod:`.tabular`) and Dyna with function approximation (:mod:`.function_approx`),
with their given and learned models (:mod:`.models`, :mod:`.learned_models`, :mod:`.vector_models`)."""
