"""`python -m advforensics` (and `torchrun ... -m advforensics`): the advforensics command."""

from advforensics.cli.main import main

main()
