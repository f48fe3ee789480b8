from tamc.cli import main

main()
