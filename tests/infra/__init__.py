"""Real components the tests start and always tear down: sshd hosts in network namespaces
(fake Raspberry Pis) and a one-node Slurm cluster."""
