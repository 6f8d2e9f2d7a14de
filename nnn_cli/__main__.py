from nnn_cli.cli.app import main

main()
