from gen_lightning.cli import main

main()
