from saturn.cli.main import run

run()
