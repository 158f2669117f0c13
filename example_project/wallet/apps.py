from django.apps import AppConfig


class WalletConfig(AppConfig):
    name = "example_project.wallet"
    label = "wallet"
    default_auto_field = "django.db.models.BigAutoField"
