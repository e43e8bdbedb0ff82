from trainer.demo_model.build import main

main()
