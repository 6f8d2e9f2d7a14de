from nnn_cli.cli import main

main()
