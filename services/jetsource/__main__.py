from jetsource.cli import main

main()
