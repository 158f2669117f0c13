from rest_framework import serializers

from .models import Charge, Order


class ChargeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Charge
        fields = ["id", "amount", "description", "created_at"]
        extra_kwargs = {"amount": {"min_value": 1}}


class OrderSerializer(serializers.ModelSerializer):
    class Meta:
        model = Order
        fields = ["id", "product", "quantity", "created_at"]
        extra_kwargs = {"quantity": {"min_value": 1}}
