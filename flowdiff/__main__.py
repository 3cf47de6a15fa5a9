from flowdiff.cli import main

main()
