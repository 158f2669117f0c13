from django.contrib import admin

from .models import Charge, Order, Wallet

admin.site.register(Wallet)
admin.site.register(Charge)
admin.site.register(Order)
