from jetsource.observer.server import main

main()
