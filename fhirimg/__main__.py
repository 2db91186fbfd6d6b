from fhirimg.cli import main

main()
