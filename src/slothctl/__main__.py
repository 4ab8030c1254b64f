from slothctl.cli.app import main

main()
