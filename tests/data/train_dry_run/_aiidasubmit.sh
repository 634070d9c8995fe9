#!/bin/bash
#SBATCH --no-requeue
#SBATCH --job-name="aiida-<pk>"
#SBATCH --get-user-env
#SBATCH --output=_scheduler-stdout.txt
#SBATCH --error=_scheduler-stderr.txt
#SBATCH --partition=gpu
#SBATCH --account=nextham
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --time=02:00:00
#SBATCH --gres=gpu:2

# ENVIRONMENT VARIABLES BEGIN ###
export OMP_NUM_THREADS='8'
# ENVIRONMENT VARIABLES END ###

'/opt/nextham/venv/bin/torchrun' '--standalone' '--nproc_per_node' '2' '-m' 'aiida_nextham.engine.train_command' 'config.yaml' '--resume'  > 'nextham.out' 2> 'nextham.err'
