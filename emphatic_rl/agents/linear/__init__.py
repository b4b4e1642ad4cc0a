"""Linear agents: the batched linear actor-critic (ACE, ACE-direct, OffPAC; registered in :mod:`.ace`), its critics
(TD, TDC, TDRC, ETD, GQ, oracle), its compiled population kernels and its compiled evaluation rollouts."""
