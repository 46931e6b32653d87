"""Human studies: the stimuli and layouts of the crowd experiments, and simulated crowds (`simulate`)."""
