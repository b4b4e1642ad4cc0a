"""Deep agents on replay: deep ACE / OffPAC (discrete actions), Gaussian ACE / OffPAC and DDPG / emphatic DPG
(continuous actions), and DQN."""
